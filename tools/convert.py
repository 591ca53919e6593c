#!/usr/bin/env python
"""Convert an official checkpoint into a timm ``save_for_hf`` folder (config.json + model.safetensors).

    python tools/convert.py --model rednet26 --checkpoint rednet26-4948f75f.pth --out weights/rednet26
    python tools/convert.py --model sknet50 --checkpoint model_best.pth.tar --out out/sknet50 --overwrite
    python tools/convert.py --model res2net50 --checkpoint ft.safetensors --out out/ft --num-classes 37
    python tools/convert.py --model se_resnet50 --checkpoint se_resnet50.pth --out out/se50 --push org/se_resnet50
    python tools/convert.py --model moat_0 --checkpoint moat0_imagenet_1k_224_w_position_embedding.tar.gz --out w/moat_0
    python tools/convert.py --model rednet50 --checkpoint RedNet50_pretrained.pdparams --out weights/rednet50

The checkpoint may be a bare state dict or any usual container ({'model': ...}, {'state_dict': ...},
{'state_dict_ema': ...}, mmcls {'meta': ..., 'state_dict': ...}) in a .pth/.pt/.bin (read with
torch.load(weights_only=True): a file that needs code to unpickle is refused) or a .safetensors file; or, read
without their frameworks, a TensorFlow checkpoint (a .tar.gz/.tar release archive, its folder, prefix or .index) or
a PaddlePaddle .pdparams (a pickle of numpy arrays; any other pickled object is refused). The keys are mapped with
the family's checkpoint_filter_fn and loaded strictly; the folder is written atomically. Load it with

    import backbones, timm
    model = timm.create_model('local-dir:out/se50', pretrained=True)
"""
import argparse
import json
import logging
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's backbones, whatever is installed
from backbones import _cli  # noqa: E402
from backbones.convert import convert_checkpoint  # noqa: E402


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f'not valid JSON ({e}): {text!r}') from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object like \'{{"stem_chs": 32}}\', got {text!r}')
    return value


def main(argv=None) -> int:
    """0 on success; any error is one line on stderr, exit status 1 (2 for bad arguments)."""
    return _cli.run(_main, argv)


def _main(argv=None) -> int:
    ap = _cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', required=True, help='zoo model name, optionally with a tag (sknet50.ra_in1k)')
    ap.add_argument('--checkpoint', required=True,
                    help='official checkpoint: .pth / .pt / .bin / .safetensors, a TensorFlow checkpoint (.tar.gz, '
                         'folder or .index) or a PaddlePaddle .pdparams')
    ap.add_argument('--out', required=True, help='output folder (config.json + model.safetensors)')
    ap.add_argument('--num-classes', type=int, help="classifier size (default: the checkpoint's)")
    ap.add_argument('--model-kwargs', type=_json_object, default=None, metavar='JSON',
                    help='extra create_model kwargs as a JSON object, e.g. \'{"stem_chs": 32}\'')
    ap.add_argument('--overwrite', action='store_true',
                    help='replace an existing --out folder that holds only an earlier conversion (nothing else)')
    ap.add_argument('--push', metavar='REPO', help='also push the converted model to this Hub repo id')
    ap.add_argument('--private', action='store_true', help='with --push: create the repo private')
    args = ap.parse_args(argv)
    if args.num_classes is not None and args.num_classes < 0:
        ap.error(f'--num-classes {args.num_classes}: expected 0 (no head) or more')
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    out = convert_checkpoint(
        args.model, args.checkpoint, args.out, model_kwargs=args.model_kwargs, num_classes=args.num_classes,
        overwrite=args.overwrite, push=args.push, push_kwargs=dict(private=True) if args.private else None)
    print(f"wrote {out}; load it with timm.create_model('local-dir:{out}', pretrained=True) after import backbones")
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Push a zoo model (released weights or your own checkpoint) to the Hugging Face Hub.

One commit with ``config.json``, ``model.safetensors`` and a ``README.md`` model card (rewritten on every push).
Load it back with ``import backbones; timm.create_model('hf-hub:ORG/NAME', pretrained=True)``.

    python tools/push_to_hub.py sknet50 --checkpoint output/train/model_best.pth.tar --repo-id me/sknet50-pets \
        --label-names labels.txt
    python tools/push_to_hub.py se_resnet50.caffe_in1k --pretrained --repo-id me/se_resnet50
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's backbones, whatever is installed
from backbones import _cli  # noqa: E402
from backbones.hub import push  # noqa: E402


def parse_args(argv=None):
    p = _cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='zoo model name, optionally with a pretrained tag (name.tag)')
    p.add_argument('--repo-id', required=True, help="target repository, 'org/name'")
    p.add_argument('--checkpoint', default=None,
                   help='weights to push: a tools/train.py checkpoint (EMA weights preferred) or a .safetensors file')
    p.add_argument('--pretrained', action='store_true', help="push the model's released weights (no --checkpoint)")
    p.add_argument('--private', action='store_true', help='create the repository as private')
    p.add_argument('--revision', default=None, help='existing branch to commit to (default: main)')
    p.add_argument('--commit-message', default='Add model')
    p.add_argument('--label-names', default=None,
                   help='class names: a file (JSON list or one per line) or a comma-separated list')
    p.add_argument('--token', default=None, help='Hub token (default: HF_TOKEN / the saved login)')
    p.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    return p.parse_args(argv)


def main(argv=None) -> int:
    """0 on success; any error is one line on stderr, exit status 1 (2 for bad arguments)."""
    return _cli.run(_main, argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    if args.pretrained and args.checkpoint:
        print('error: --pretrained and --checkpoint are exclusive', file=sys.stderr)
        return 2
    kwargs = dict(pretrained=True) if args.pretrained else {}
    url = push(
        args.model, args.repo_id, checkpoint=args.checkpoint, private=args.private, revision=args.revision,
        commit_message=args.commit_message, label_names=args.label_names, token=args.token,
        create_pr=args.create_pr, **kwargs)
    print(url)
    return 0


if __name__ == '__main__':
    sys.exit(main())

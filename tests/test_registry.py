"""Registration: zoo names only, every family registered, and timm's registry left untouched."""
import subprocess
import sys
import textwrap

import pytest
import timm

import backbones
from backbones import _registry


def test_list_models_zoo_only():
    names = backbones.list_models()
    assert len(names) == len(set(names))
    assert 'resnet50' not in names and _registry.get_variant_info('se_resnet50').timm_twin not in names
    assert backbones.list_models('se_resnet*') == ['se_resnet50', 'se_resnet101', 'se_resnet152']
    for name in names:
        assert name in timm.list_models(), name
        assert backbones.get_family(name).name == _registry.get_variant_info(name).family


def test_every_family_has_metadata():
    for fam in backbones.list_families():
        f = backbones.get_family(fam)
        assert f.paper and f.authors and f.arxiv and f.repo and f.license
        assert f.paper in f.bibtex and f.authors[0].split()[-1] in f.authors_short
        assert backbones.list_models(family=fam), f'family {fam} registers no model'


def test_family_reads_title_and_authors_from_bibtex():
    bib = '''
        @inproceedings{x2021,
          title={{ConViT}: A Title},
          author={d'Ascoli, St{\\'e}phane and Touvron, Hugo and
                  Morcos, Ari},
          booktitle={Proceedings of the 38th International Conference on Machine Learning (ICML)},
          year={2021}
        }'''
    fam = _registry.Family(name='x', bibtex=bib, arxiv='1', repo='a/b', license='mit', module='m')
    assert fam.bibtex.startswith('@inproceedings{x2021,\n  title=')  # dedented: the card prints it as written
    assert fam.paper == 'ConViT: A Title'
    assert fam.authors == ("Stéphane d'Ascoli", 'Hugo Touvron', 'Ari Morcos')
    assert fam.authors_short == "d'Ascoli et al."
    two = _registry.Family(name='y', bibtex='@article{y, title={T}, author={Tatsunami, Yuki and Masato Taki}}',
                           arxiv='1', repo='a/b', license='mit', module='m')
    assert two.authors == ('Yuki Tatsunami', 'Masato Taki') and two.authors_short == 'Tatsunami and Taki'
    with pytest.raises(ValueError, match='title=.*author='):
        _registry.Family(name='z', bibtex='@misc{z, note={no title}}', arxiv='1', repo='a/b', license='mit',
                         module='m')


def test_timm_twins_are_timm_models():
    """A variant's timm twin is a timm entrypoint, never a zoo name, and builds the same number of parameters."""
    entrypoints, zoo = set(timm.list_models()), set(backbones.list_models())
    for name in zoo:
        twin = _registry.get_variant_info(name).timm_twin
        assert twin is None or (twin in entrypoints and twin not in zoo), name
    twin = _registry.get_variant_info('se_resnet50')
    model = timm.create_model(twin.timm_twin, device='meta', **twin.timm_twin_kwargs)
    assert sum(p.numel() for p in model.parameters()) == twin.params


def test_import_leaves_timm_untouched():
    """Compare timm's registry in a fresh interpreter before and after `import backbones`."""
    code = textwrap.dedent('''
        import json, timm
        from timm.models import _registry as r
        def snap():
            return {n: (r._model_entrypoints[n].__module__, repr(r._model_pretrained_cfgs.get(n)))
                    for n in r._model_entrypoints}
        before = snap()
        import backbones
        after = snap()
        changed = [n for n in before if after.get(n) != before[n]]
        added = sorted(set(after) - set(before))
        print(json.dumps(dict(changed=changed, added=added)))
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    import json
    res = json.loads(out.strip().splitlines()[-1])
    assert res['changed'] == []
    assert sorted(res['added']) == sorted(backbones.list_models())


def test_clash_with_timm_name_raises():
    with pytest.raises(_registry.NameClashError, match='resnet50'):
        exec('def resnet50(pretrained=False, **kwargs): pass\n'
             'register(resnet50)', {'register': _registry.register_zoo_model(params=1)})

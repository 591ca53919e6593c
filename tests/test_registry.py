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
    assert 'resnet50' not in names and 'legacy_seresnet50' not in names
    assert backbones.list_models('se_resnet*') == ['se_resnet50', 'se_resnet101', 'se_resnet152']
    for name in names:
        assert name in timm.list_models(), name
        assert backbones.get_family(name).name == _registry.get_variant_info(name).family


def test_every_family_has_metadata():
    for fam in backbones.list_families():
        f = backbones.get_family(fam)
        assert f.paper and f.arxiv and f.repo and f.license
        assert backbones.list_models(family=fam), f'family {fam} registers no model'


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

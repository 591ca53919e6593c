"""README's model table is generated from the registry and kept current; user-facing files cite primary sources."""
import re
import subprocess
import sys
from pathlib import Path

import backbones
from backbones.docs import weights_table_markdown, zoo_table_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_current():
    res = subprocess.run([sys.executable, str(ROOT / 'tools/readme_table.py'), '--check'], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


def test_table_lists_every_model():
    table = zoo_table_markdown()
    for name in backbones.list_models():
        assert f'| `{name}` |' in table


def test_weights_column_names_the_source():
    """Hosted weights link their hub id; weights converted on load link the file; official weights that must be
    fetched by hand link the official file; none is said."""
    from timm.models import get_pretrained_cfg
    rows = {line.split('|')[1].strip(' `'): line.split('|')[5].strip()
            for line in zoo_table_markdown().splitlines() if line.startswith('| `')}
    assert rows['davit_t'] == '[`timm/davit_tiny.msft_in1k`](https://huggingface.co/timm/davit_tiny.msft_in1k)'
    assert rows['moat_0'] == (f'[official]({get_pretrained_cfg("moat_0").url}) (TensorFlow 1 checkpoint in a .tar.gz, '
                              f'converted on first load)')
    assert rows['rednet26'].startswith('[PaddleClas](https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/'
                                       'RedNet26_pretrained.pdparams) (PaddlePaddle .pdparams')
    assert rows['biformer_tiny'].startswith('[official](https://') and 'manual download' in rows['biformer_tiny']
    link = rows['biformer_tiny'][len('[official]('):].split(')')[0]
    assert link in ' '.join(get_pretrained_cfg('biformer_tiny').notes)
    assert rows['davit_h'] == 'none released'


def test_weights_table_lists_every_variant():
    """README's weights table: one row per variant with its status, and the counts from the registry."""
    from backbones.weights import weights_info
    table = weights_table_markdown()
    assert table.startswith('84 of 102 variants download their weights')
    for name in backbones.list_models():
        info = weights_info(name)
        assert f'| `{info.model}` | {info.status} |' in table


def test_ci_runs_readme_setup():
    """``.ci/run`` installs and tests with exactly README's "Set up" commands, so CI runs what a new user runs."""
    block = (ROOT / 'README.md').read_text().split('## Set up', 1)[1].split('```bash\n', 1)[1].split('```', 1)[0]
    ci_lines = {line.strip() for line in (ROOT / '.ci/run').read_text().splitlines()}
    commands = block.strip().splitlines()
    assert any(c.startswith('pip install') for c in commands) and any(c.startswith('pytest') for c in commands)
    for cmd in commands:
        assert cmd in ci_lines or f'{cmd} "$@"' in ci_lines, cmd


def test_user_facing_files_cite_only_primary_sources():
    """Users cannot open the team's internal notes: code, tools, configs, cards, README, CHANGELOG never cite them."""
    unreadable = re.compile(r'specs/|shared/|design\.md')
    files = [ROOT / 'README.md', ROOT / 'CHANGELOG.md']
    for folder, pattern in (('backbones', '**/*.py'), ('tools', '**/*.py'), ('configs', '**/*.yaml'),
                            ('model_cards', '**/*.md')):
        files += sorted((ROOT / folder).glob(pattern))
    hits = [f'{path.relative_to(ROOT)}:{i}' for path in files
            for i, line in enumerate(path.read_text().splitlines(), 1) if unreadable.search(line)]
    assert not hits, f'cite the primary source (paper section / official repo file at a commit) instead: {hits}'

"""README's model table is generated from the registry and kept current."""
import subprocess
import sys
from pathlib import Path

import backbones
from backbones.docs import zoo_table_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_current():
    res = subprocess.run([sys.executable, str(ROOT / 'tools/readme_table.py'), '--check'], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


def test_table_lists_every_model():
    table = zoo_table_markdown()
    for name in backbones.list_models():
        assert f'| `{name}` |' in table

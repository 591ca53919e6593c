"""Run timm's own ``tests/test_models.py`` against the zoo (the smallest variant of each family).

timm's test file is third-party code, so it is not committed: :func:`fetch_sdist` downloads the sdist of the
INSTALLED timm version with ``pip download`` (cached under ``~/.cache/backbones/timm-sdist``), :func:`prepare`
extracts its ``tests/`` into a temp dir and adds our ``conftest.py`` (``run_conftest.py``) and a ``pytest.ini``,
and :func:`run` runs it in a subprocess (``GITHUB_ACTIONS=1``: timm's CI settings, which also leave out the tests
that download weights). See ``shared/specs/timm_tests.md`` for the recipe.

Environment knobs:
- ``BACKBONES_TIMM_SDIST``: path of a ``timm-<ver>.tar.gz`` to use instead of downloading (offline runs);
- ``BACKBONES_CACHE``: cache root (default ``~/.cache/backbones``);
- ``BACKBONES_TIMM_SUITE_TIMEOUT``: subprocess time limit in seconds (default 1800);
- ``BACKBONES_TIMM_SUITE_THREADS``: torch / OpenMP threads of the subprocess (default: the calling process's, which
  ``tests/conftest.py`` sets to its share of the cores under pytest-xdist).
"""
import importlib.metadata
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

import backbones
from backbones._registry import _VARIANTS

__all__ = ['SuiteError', 'SuiteRun', 'smallest_per_family', 'fetch_sdist', 'prepare', 'run', 'MARKERS']

# timm's per-model markers run here, plus 'prune_contract', which our conftest puts on timm's unmarked
# test_prune_intermediate_layers_contract (the only check of the prune_intermediate_layers contract).
MARKERS = ['forward', 'backward', 'cfg', 'cfg_nonstd', 'features', 'fxforward', 'fxbackward', 'torchscript']
PRUNE_MARKER = 'prune_contract'

# Families whose head has layers after the global pool (timm's EARLY_POOL_MODELS): reset_classifier(0, '') cannot
# return the unpooled map there. None yet.
EARLY_POOL_FAMILIES: List[str] = []
# Force a family's std / non-std classification (default: non-std iff forward_features is not 4-D on meta).
NON_STD_OVERRIDE: Dict[str, bool] = {}

# what every model of a family must go through (test function names of timm's test_models.py)
_COMMON_TESTS = {
    'test_model_forward', 'test_model_backward', 'test_model_forward_torchscript', 'test_model_forward_fx',
    'test_model_backward_fx', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
}
_STD_TESTS = {'test_model_default_cfgs', 'test_model_forward_features'}
_NON_STD_TESTS = {'test_model_default_cfgs_non_std'}
_PRUNE_TEST = 'test_prune_intermediate_layers_contract'

_HERE = Path(__file__).resolve().parent
_REPO = Path(backbones.__file__).resolve().parents[1]


class SuiteError(RuntimeError):
    """The suite could not be set up or run (no sdist, crashed subprocess, ...)."""


def smallest_per_family() -> Dict[str, str]:
    """family -> its variant with the fewest official params (every registered family, automatically)."""
    best: Dict[str, str] = {}
    for name, info in _VARIANTS.items():
        cur = best.get(info.family)
        if cur is None or (info.params, name) < (_VARIANTS[cur].params, cur):
            best[info.family] = name
    return dict(sorted(best.items()))


def timm_version() -> str:
    return importlib.metadata.version('timm')


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else '...\n' + text[-n:]


def _valid_tarball(path: Path) -> bool:
    try:
        with tarfile.open(path) as tar:
            return any(m.name.endswith('/tests/test_models.py') for m in tar.getmembers())
    except (OSError, tarfile.TarError):
        return False


def fetch_sdist(version: Optional[str] = None) -> Path:
    """Path of ``timm-<version>.tar.gz``: ``$BACKBONES_TIMM_SDIST``, the cache, or ``pip download`` (from PyPI)."""
    version = version or timm_version()
    given = os.environ.get('BACKBONES_TIMM_SDIST')
    if given:
        path = Path(given).expanduser()
        if not _valid_tarball(path):
            raise SuiteError(f'BACKBONES_TIMM_SDIST={given} is not a timm sdist with tests/test_models.py')
        return path
    cache = Path(os.environ.get('BACKBONES_CACHE', '~/.cache/backbones')).expanduser() / 'timm-sdist'
    target = cache / f'timm-{version}.tar.gz'
    if target.is_file() and _valid_tarball(target):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
               '--disable-pip-version-check', '-d', tmp, f'timm=={version}']
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as e:
            raise SuiteError(f'`{" ".join(cmd)}` timed out after {e.timeout} s') from e
        found = sorted(Path(tmp).glob(f'timm-{version}.tar.gz'))
        if proc.returncode != 0 or not found:
            raise SuiteError(
                f'could not download the timm {version} sdist (its tests/ are what this test runs); '
                f'`{" ".join(cmd)}` exited {proc.returncode}. PyPI must be reachable, or set BACKBONES_TIMM_SDIST '
                f'to a local timm-{version}.tar.gz.\n{_tail(proc.stdout + proc.stderr, 2000)}')
        if not _valid_tarball(found[0]):
            raise SuiteError(f'the downloaded {found[0].name} has no tests/test_models.py')
        os.replace(found[0], target)
    return target


def _markers_ini(pyproject: Path) -> str:
    """pytest.ini text declaring timm's markers (read from its pyproject.toml) and ours."""
    markers = []
    try:
        import tomllib
        with open(pyproject, 'rb') as f:
            markers = list(tomllib.load(f)['tool']['pytest']['ini_options']['markers'])
    except Exception:  # py3.10 or a changed layout: markers are only declared to silence warnings
        markers = [f'{m}: timm marker' for m in ['base'] + MARKERS]
    markers.append(f'{PRUNE_MARKER}: timm test_prune_intermediate_layers_contract (marked by our conftest)')
    markers.append('timeout: pytest-timeout mark (inert without the plugin)')
    lines = ['[pytest]', 'markers ='] + [f'    {m}' for m in markers]
    lines += ['filterwarnings =', '    ignore::DeprecationWarning', '    ignore::FutureWarning', '']
    return '\n'.join(lines)


def prepare(root: Path, models: Dict[str, str], main_families: List[str], prune_families: List[str],
            sdist: Optional[Path] = None, threads: int = 2) -> Path:
    """Lay out ``root`` = {pytest.ini, conftest.py, bb_timm_suite.json, tests/ (timm's)}; returns ``root``."""
    sdist = sdist or fetch_sdist()
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        prefix = tar.getmembers()[0].name.split('/')[0] + '/'
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix):] if m.name.startswith(prefix) else ''
            if (rel.startswith('tests/') or rel == 'pyproject.toml') and (m.isfile() or m.isdir()):
                m.name = rel
                members.append(m)
        kwargs = dict(filter='data') if hasattr(tarfile, 'data_filter') else {}
        tar.extractall(root, members=members, **kwargs)
    if not (root / 'tests' / 'test_models.py').is_file():
        raise SuiteError(f'{sdist} has no tests/test_models.py')
    (root / 'pytest.ini').write_text(_markers_ini(root / 'pyproject.toml'))
    shutil.copyfile(_HERE / 'run_conftest.py', root / 'conftest.py')
    cfg = dict(models=models, main_families=main_families, prune_families=prune_families, threads=threads,
               early_pool_families=EARLY_POOL_FAMILIES, non_std_override=NON_STD_OVERRIDE)
    (root / 'bb_timm_suite.json').write_text(json.dumps(cfg, indent=1))
    return root


def marker_expr(main: bool = True, prune: bool = False) -> str:
    return ' or '.join((MARKERS if main else []) + ([PRUNE_MARKER] if prune else []))


@dataclass
class SuiteRun:
    """The outcome of one subprocess run of timm's test_models.py."""
    cmd: List[str]
    returncode: int
    output: str
    wall_s: float
    cpu_s: float  # user + sys CPU seconds of the subprocess (less sensitive than wall time to a busy machine)
    summary: Dict[str, int]
    classes: Dict[str, dict] = field(default_factory=dict)  # family -> {model, non_std, feat_inter, error, cls}
    results: Dict[str, dict] = field(default_factory=dict)  # nodeid -> {family, test, outcome, duration, error}

    def tests_run(self) -> int:
        """Number of tests the summary line reports as run (passed, failed, skipped, errors)."""
        return sum(self.summary.get(k, 0) for k in ('passed', 'failed', 'skipped', 'errors', 'xfailed', 'xpassed'))

    def family_results(self, family: str, prune: Optional[bool] = None) -> Dict[str, dict]:
        """nodeid -> result for ``family``: all its tests, or only (``prune=True``) / all but the prune contract."""
        return {k: v for k, v in self.results.items()
                if v['family'] == family and (prune is None or (v['test'] == _PRUNE_TEST) == prune)}

    def expected_tests(self, family: str, prune: bool = False) -> set:
        if prune:
            return {_PRUNE_TEST}
        cls = self.classes.get(family, {})
        return set(_COMMON_TESTS) | (_NON_STD_TESTS if cls.get('non_std') else _STD_TESTS)

    def family_problems(self, family: str, prune: bool = False) -> List[str]:
        """Everything wrong for ``family`` (empty list = all good) in the main tests or (``prune``) the prune one."""
        problems = []
        cls = self.classes.get(family)
        if cls is None:
            return [f'family {family} was not part of the run']
        if cls.get('error'):
            problems.append(f'{cls["model"]} fails on the meta device: {cls["error"]}')
        if not cls.get('feat_inter'):
            problems.append(f'{cls["model"]} has no forward_intermediates (timm contract; getter features need it)')
        res = self.family_results(family, prune)
        bad = {k: v for k, v in res.items() if v['outcome'] in ('failed', 'error')}
        if bad:
            problems.append(f'{len(bad)} failing: ' + ', '.join(k.split('::')[-1] for k in sorted(bad)))
        for nodeid, v in sorted(bad.items()):
            problems.append(f'{v["outcome"].upper()} {nodeid}\n{_tail(v["error"], 3000)}')
        ran = {v['test'] for v in res.values() if v['outcome'] in ('passed', 'skipped')}
        missing = self.expected_tests(family, prune) - ran - {v['test'] for v in bad.values()}
        if missing:
            problems.append(f'{cls["model"]}: expected timm tests not run: {sorted(missing)}')
        if not any(v['outcome'] == 'passed' for v in res.values()):
            problems.append(f'{cls["model"]}: no timm test passed')
        return problems

    def report(self, family: Optional[str] = None) -> str:
        lines = []
        for fam in sorted(self.classes) if family is None else [family]:
            res = self.family_results(fam)
            counts = {}
            for v in res.values():
                counts[v['outcome']] = counts.get(v['outcome'], 0) + 1
            secs = sum(v['duration'] for v in res.values())
            cpu = sum(v.get('cpu', 0.0) for v in res.values())
            kind = 'non-std' if self.classes[fam].get('non_std') else 'NCHW'
            lines.append(f'{fam} ({self.classes[fam]["model"]}, {kind}): {len(res)} selected, '
                         + ', '.join(f'{n} {k}' for k, n in sorted(counts.items()))
                         + f'; {secs:.1f} s in tests ({cpu:.1f} s CPU)')
            for nodeid, v in sorted(res.items(), key=lambda kv: -kv[1]['duration']):
                lines.append(f'    {v["outcome"]:7s} {v["duration"]:6.1f} s {v.get("cpu", 0.0):6.1f} s CPU  '
                             f'{nodeid.split("::")[-1]}')
        lines.append(f'subprocess: exit {self.returncode}, {self.summary}, {self.wall_s:.1f} s wall, '
                     f'{self.cpu_s:.1f} s CPU')
        return '\n'.join(lines)


_SUMMARY_RE = re.compile(r'(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)\b')


def parse_summary(output: str) -> Dict[str, int]:
    """Counts from pytest's final summary line (``3 passed, 2 skipped, 40 deselected in 9.1s``)."""
    for line in reversed(output.strip().splitlines()):
        if re.search(r'\bin [\d.]+s\b', line) and _SUMMARY_RE.search(line):
            out = {}
            for n, kind in _SUMMARY_RE.findall(line):
                kind = {'error': 'errors', 'warning': 'warnings'}.get(kind, kind)
                out[kind] = int(n)
            return out
    return {}


def run(root: Path, main_families: List[str], prune_families: List[str] = (), threads: Optional[int] = None,
        timeout: Optional[float] = None, sdist: Optional[Path] = None) -> SuiteRun:
    """Run timm's test_models.py in a subprocess (in ``root``) on the smallest model of each family.

    ``main_families`` get every per-model test of :data:`MARKERS`; ``prune_families`` get timm's slow, unmarked
    ``test_prune_intermediate_layers_contract``. One subprocess serves both (one import / collection).
    """
    main_families, prune_families = sorted(main_families), sorted(prune_families)
    smallest = smallest_per_family()
    unknown = sorted(set(main_families + prune_families) - set(smallest))
    if unknown:
        raise SuiteError(f'unknown zoo families {unknown}; known: {sorted(smallest)}')
    models = {fam: smallest[fam] for fam in sorted(set(main_families + prune_families))}
    timeout = timeout or float(os.environ.get('BACKBONES_TIMM_SUITE_TIMEOUT', 1800))
    threads = threads or int(os.environ.get('BACKBONES_TIMM_SUITE_THREADS') or 0) or torch.get_num_threads()
    prepare(root, models, main_families, prune_families, sdist=sdist, threads=threads)
    results_path = root / 'bb_results.json'
    cmd = [sys.executable, '-m', 'pytest', str(root / 'tests' / 'test_models.py'), '-c', str(root / 'pytest.ini'),
           '--rootdir', str(root), '-p', 'no:cacheprovider', '-q', '-rfEs', '--tb=short',
           '-m', marker_expr(bool(main_families), bool(prune_families))]
    env = dict(os.environ)
    env.pop('PYTEST_ADDOPTS', None)
    env.pop('TORCH_BACKEND', None)
    env.update(
        GITHUB_ACTIONS='1',  # timm's CI lists; also drops the weight-downloading and FX+TorchScript tests
        TORCH_DEVICE='cpu',
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        BB_TIMM_SUITE_RESULTS=str(results_path),
        PYTHONDONTWRITEBYTECODE='1',
        PYTHONPATH=os.pathsep.join([str(_REPO)] + [p for p in [env.get('PYTHONPATH')] if p]),
    )
    t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
        raise SuiteError(f'timm suite exceeded {timeout:.0f} s: {" ".join(cmd)}\n{_tail(out)}') from e
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    output = proc.stdout + proc.stderr
    summary = parse_summary(proc.stdout)
    if not results_path.is_file():
        raise SuiteError(f'timm suite wrote no results (exit {proc.returncode}): {" ".join(cmd)}\n{_tail(output)}')
    data = json.loads(results_path.read_text())
    suite = SuiteRun(cmd=cmd, returncode=proc.returncode, output=output, wall_s=wall, cpu_s=cpu, summary=summary,
                     classes=data['classes'], results=data['results'])
    if proc.returncode not in (0, 1) or not suite.tests_run():
        # 2: interrupted / collection error, 3: internal error, 4: usage error, 5: nothing collected
        raise SuiteError(f'timm suite did not run properly (exit {proc.returncode}, summary {summary}): '
                         f'{" ".join(cmd)}\n{_tail(output)}')
    return suite

"""Installing the project shadows no other package: the generic top-level folders stay in the checkout."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = ("datasets", "utils", "models", "backbone", "benchmarks", "main", "main_lt", "longtail")


def test_setup_cfg_installs_no_module_of_ours():
    from setuptools.config.setupcfg import read_configuration
    options = read_configuration(os.path.join(ROOT, "setup.cfg"))["options"]
    assert not options.get("packages") and not options.get("py_modules")


def test_another_datasets_package_stays_importable(tmp_path):
    """Outside the checkout, with this project installed in the environment, ``import datasets``
    finds another package of that name (as Hugging Face's would be found) and none of ours resolves."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("OWNER = 'another project'\n")
    probe = ("import importlib.util, sys; sys.path.append(sys.argv[1]); import datasets; "
             "print(datasets.OWNER); "
             f"print([n for n in {OURS!r} if (s := importlib.util.find_spec(n)) and s.origin and "
             "s.origin.startswith(sys.argv[2])])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", probe, str(fake.parent), ROOT], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["another project", "[]"]

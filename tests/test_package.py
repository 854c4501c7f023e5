import pydoc
import subprocess
import sys

import tfbn


def test_that_dir_lists_the_public_names_without_importing_tensorflow():
    code = ("import sys, tfbn; names = dir(tfbn); "
            "print(' '.join(n for n in names if not n.startswith('__'))); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, tensorflow_imported = out.splitlines()
    assert names.split() == sorted(tfbn.__all__)
    assert {"build_mlp", "callbacks", "instruments", "tags", "report", "run_study"} <= set(names.split())
    assert tensorflow_imported == "False"


def test_that_every_public_name_works_after_a_plain_import():
    for name in tfbn.__all__:
        assert getattr(tfbn, name) is not None
    assert tfbn.tags.__name__ == "tfbn.tags" and tfbn.callbacks.__name__ == "tfbn.callbacks"
    assert tfbn.build_mlp is tfbn.models.build_mlp


def test_that_help_shows_the_functions_and_the_modules():
    text = pydoc.render_doc(tfbn, renderer=pydoc.plaintext)
    for name in ("build_mlp(", "load_config(", "run_study(", "tfbn.callbacks", "tfbn.instruments", "tfbn.tags"):
        assert name in text, name

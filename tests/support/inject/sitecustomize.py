"""Decoder faults for tests, in every Python process started with this folder on
PYTHONPATH (a test's `lofipipe` driver and the Ray workers it starts):

    LOFIPIPE_TEST_DECODER_FAULTS="crash=a.mp4,b.mp4;hang=c.mp4"

makes `SnippetDecoder.snippets` kill its own process with SIGSEGV (as a decoder crash
would) or sleep for ever (as a decoder stuck in a loop would) on videos whose URI ends with
one of the names. Nothing in lofipipe knows about it.
"""

import importlib.abc
import os
import signal
import sys
import time

_FAULTS = {
    kind: tuple(names.split(","))
    for kind, _, names in (
        part.partition("=")
        for part in os.environ.get("LOFIPIPE_TEST_DECODER_FAULTS", "").split(";")
        if part
    )
}


def _patch(module) -> None:
    original = module.SnippetDecoder.snippets

    def snippets(self, uri, *args, **kwargs):
        if uri.endswith(_FAULTS.get("crash", ())):
            os.kill(os.getpid(), signal.SIGSEGV)
        if uri.endswith(_FAULTS.get("hang", ())):
            while True:
                time.sleep(60)
        return original(self, uri, *args, **kwargs)

    module.SnippetDecoder.snippets = snippets


class _AfterImport(importlib.abc.MetaPathFinder):
    """Patches lofipipe.media.decode right after it is first imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "lofipipe.media.decode":
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        loader = spec.loader
        execute = loader.exec_module

        def exec_module(module):
            execute(module)
            _patch(module)

        loader.exec_module = exec_module
        return spec


if _FAULTS:
    sys.meta_path.insert(0, _AfterImport())

"""Lambda SnapStart's runtime hooks for Python (the `snapshot-restore-py` API), stdlib only.

Importable by function code, as in Lambda's managed Python runtimes. In Corral the
"snapshot" is a per-version template: `register_before_snapshot` hooks run in the template
once init has finished (in reverse order of registration), `register_after_restore` hooks
in every instance forked from it, before its first invoke (in order of registration). An
instance that did not come from a template (the version's first, or `corral:template=off`)
runs neither, like a Lambda function without SnapStart.
"""

_before_snapshot = []
_after_restore = []


def register_before_snapshot(func, *args, **kwargs):
    """Run `func(*args, **kwargs)` in the template before instances fork from it."""
    _before_snapshot.append((func, args, kwargs))
    return func


def register_after_restore(func, *args, **kwargs):
    """Run `func(*args, **kwargs)` in every instance forked from the template."""
    _after_restore.append((func, args, kwargs))
    return func


def get_before_snapshot():
    return list(_before_snapshot)


def get_after_restore():
    return list(_after_restore)


def run_before_snapshot():
    for func, args, kwargs in reversed(_before_snapshot):
        func(*args, **kwargs)


def run_after_restore():
    for func, args, kwargs in _after_restore:
        func(*args, **kwargs)

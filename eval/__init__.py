"""Metrics for generated video (FVD in `eval.fvd` on the I3D of `eval.i3d`; CLIP alignment, identity, ...).

Import the submodules directly (`from eval.fvd import FVD`), never `import eval` on its own: the package name
is only safe as a module path, beside the builtin `eval`. eval/ may import wan_train; wan_train never imports
eval/. Every network is built in code and loads weights from a path the user gives; nothing downloads.
"""

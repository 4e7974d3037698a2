"""Code kept apart from `gmia` because it mirrors another project's interface (not its code).

`third_party.stylegan2_ada` is a clean-room StyleGAN2-ADA implementation whose parameter names match the
official ones; see its README for what that means and for the licensing position.
"""

__all__: list[str] = []

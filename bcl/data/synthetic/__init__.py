"""A procedural, transistor-like defect data set: the embedded default that needs no download.

:class:`SyntheticTransistor` draws top-down scenes in the style of the MVTec AD ``transistor`` photos:
a copper stripboard (vertical copper strips with dark gaps, a regular grid of holes through which the
dark background shows), a black TO-92-like package with a moulded logo, and three silvery leads that
bend down into the holes of the bottom row. Four defect types follow the real category:

* ``bent_lead``: one lead bent sideways at a random point, by a random angle, in a random direction.
* ``cut_lead``: one lead cut short (its lower part missing, the hole visible) or cut through (a gap,
  with the stub left in the hole).
* ``damaged_case``: a chip of lighter material on the package edge or surface, a bite out of an edge
  (the board shows through), or scratches.
* ``misplaced``: the part is absent, strongly shifted, rotated, or put in upside down.

Every image gets the same *nuisance* distribution whatever its class -- camera shift, rotation and
scale, the exact shape of the leads, board and package colour, board texture, dust, brightness,
contrast, a lighting gradient, vignetting, a slight blur and sensor noise -- so the class is carried
only by the defect. Each image also has a defect mask: the scene is rendered a second time with the
same nuisance parameters but without the defect, and the mask is where the two renderings differ.

What this data *does* tell you: that a pipeline (data, augmentation, sampler, losses, training,
evaluation) runs end to end on a fresh machine, and how methods behave *relative to each other* on a
long-tailed problem whose minority classes are small, local defects on a cluttered, varying background.

What it does *not* tell you: accuracy on real photographs. The textures, the lighting, the optics and
the shapes and statistics of the defects are hand-made approximations (real bent leads are
three-dimensional, real chips have real fracture texture, real misplacements are physical), so a model
that does well here may still fail on the real images, and the absolute numbers carry no meaning for
MVTec AD. Use the real data (``BCL_MVTEC_ROOT``) for any claim about real defects.

Determinism: the scene of the ``i``-th image of a class is drawn from ``numpy.random.SeedSequence``
keyed by ``(seed, class, i)``, independent of the global RNGs, of the other classes' counts and of the
image size (only the pixel noise depends on the size). Images are bit-identical for a seed on a given
platform and numpy version.
"""

from bcl.data.synthetic.dataset import DEFAULT_COUNTS, SyntheticTransistor, render_synthetic_transistor
from bcl.data.synthetic.scene import CLASS_NAMES

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_COUNTS",
    "SyntheticTransistor",
    "render_synthetic_transistor",
]

"""Image hosting: validated uploads, resized derivatives, short unguessable links, fast views.

``sniff``/``probe`` read the type and size from the bytes alone; ``derivatives`` decodes once (with
libvips' fail-on checks) and makes every width and format; ``permutation`` and ``allocator`` hand out
collision-free, non-enumerable links; ``linkmap`` keeps them in SQL; ``service`` ties it to the cache
and the job queue; ``web/hosting.py`` is the HTTP side.
"""

"""Images: references, the registry client, layer extraction and the local store.

Imported only by the verbs that need images (``pull``, ``images``, ``run --image``):
nothing here is on the ``coopy --help`` path.
"""

"""Appliance images: recipes, the content-addressed image store, and baking.

recipe.py   what an image is made of (Debian suite, packages, baked-in files, units)
            and its digest
store.py    `<data_dir>/images/<hex>/rootfs` trees with their manifests; atomic writes
bake.py     recipe -> rootfs with mmdebstrap, then the corral customizations
files/      the files every image gets, laid out as in the image (units, sshd config)
roles/      the role scripts, copied to /etc/corral/roles/
"""

"""A real Debian target under QEMU: image recipe (recipe.py) and the running VM (vm.py)."""

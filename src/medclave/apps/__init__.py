"""Clinical workflows on top of the platform (layer 5): each app in a package of its own."""

"""napari dock widgets: thin adapters from layers to the backend."""

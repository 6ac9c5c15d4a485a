from napari_medgen.cli import main

main()

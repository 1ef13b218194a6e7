from photo_eraser.cli import main

main()

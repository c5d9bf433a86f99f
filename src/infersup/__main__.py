from infersup.cli import main

main()

from mothertree.cli import main

main()

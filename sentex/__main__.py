from sentex.cli import main

main()

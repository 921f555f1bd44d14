from mechunlearn.cli.app import main

main()

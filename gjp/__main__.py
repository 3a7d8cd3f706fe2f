from gjp.cli import main

main()

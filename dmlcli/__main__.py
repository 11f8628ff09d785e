from dmlcli.cli import main

main()

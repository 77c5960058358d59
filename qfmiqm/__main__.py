from qfmiqm.cli import main

main()

from hl7_alerts.cli import main

main()

from streamer.app.cli import main

main()

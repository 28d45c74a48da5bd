from streamer.app.main import main

main()

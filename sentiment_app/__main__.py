from sentiment_app.cli import main

main()

from sentiment_app.dashboard.reviews import render

render()

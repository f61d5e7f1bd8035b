from sentiment_app.dashboard.trends import render

render()

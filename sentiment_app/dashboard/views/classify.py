from sentiment_app.dashboard.classify import render

render()

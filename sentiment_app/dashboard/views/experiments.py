from sentiment_app.dashboard.experiments import render

render()

from stream.dashboard.reviews import render

render()

from stream.dashboard.trends import render

render()

from stream.dashboard.experiments import render

render()

from stream.dashboard.classify import render

render()

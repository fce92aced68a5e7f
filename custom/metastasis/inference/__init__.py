"""Whole-slide inference: where a map's pixels lie and the tiles that compute them (:mod:`.geometry`), running the
network over a slide or a folder of slides (:mod:`.run`) and the map files (:mod:`.maps`)."""

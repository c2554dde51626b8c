"""The expensive computations of each chapter, as functions of their configuration (one module per chapter).

A chapter calls them through :func:`icllib.records.result`, which computes and caches them in the live edition,
records them at the papers' size (``make record``), and replays the records in the full edition. Each function is
deterministic given its arguments (explicit seeds), runs on the device it is given, and returns plain data (numbers,
arrays, small icllib dataclasses): what the chapter's figures and asserts need, never a trained model.
"""

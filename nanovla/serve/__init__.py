"""`nanovla serve`: an OpenAI-compatible HTTP API and a web page around one loaded runtime.

    worker.py      the model's one thread, its bounded queue and the image-context cache
    chat.py        OpenAI chat-completion requests and responses (no web framework)
    app.py         the FastAPI app and `serve()` (uvicorn)
    ros_camera.py  the newest frame of a ROS 2 camera topic (only with --ros-topic)
    static/        the page at `/` (HTML, JS, CSS; no CDN)

Nothing here imports torch: the runtime is loaded by name (nanovla.runtime.load_runtime)."""

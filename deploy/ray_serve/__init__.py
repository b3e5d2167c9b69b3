"""Ray Serve: one local Triton server per replica, autoscaled on its queue time per request.

``app.py`` is the deployment (``import_path: deploy.ray_serve.app:build_app``), ``policy.py``
the autoscaling policy, ``watchdog.py`` stops a replica's server if the replica dies without
its graceful shutdown, ``scale_test.py`` the local 1 -> 3 -> 1 check (``make deploy-check``).
"""

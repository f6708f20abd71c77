"""A GStreamer RTSP server on 127.0.0.1, for the ``from_rtsp`` tests.

Runs under Debian's ``/usr/bin/python3`` (PyGObject and GStreamer come from Debian packages,
not from the venv)::

    /usr/bin/python3 tests/media/rtsp_server.py PORT LAUNCH [--path /test] [--auth USER:PASS]

``PORT`` 0 picks a free port. ``LAUNCH`` is a gst-rtsp-server launch line, its payloaders named
``pay0``, ``pay1``…; each client gets its own pipeline. With ``--auth`` clients must log in
(HTTP Basic). Prints ``READY rtsp://127.0.0.1:PORT/PATH`` once listening, or ``MISSING ...``
(exit 3) when a package or GStreamer element is not installed. Stops on SIGTERM or when its
standard input closes (so it never outlives the test process).
"""

from __future__ import annotations

import argparse
import signal
import sys

PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-ugly"
)


def missing(what: str) -> None:
    print(f"MISSING {what}: apt-get install {PACKAGES} (scripts/setup.sh does)", flush=True)
    sys.exit(3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("launch")
    parser.add_argument("--path", default="/test")
    parser.add_argument("--auth", default=None, help="USER:PASS")
    args = parser.parse_args()

    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as exc:
        missing(f"GStreamer RTSP server bindings ({exc})")

    Gst.init(None)
    try:  # every element of the launch line is installed
        Gst.parse_launch(args.launch).set_state(Gst.State.NULL)
    except GLib.Error as exc:
        missing(f"GStreamer element ({exc.message})")

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(args.launch)
    factory.set_shared(False)
    if args.auth:
        user, _, password = args.auth.partition(":")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        for permission in (
            GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS,
            GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT,
        ):
            permissions.add_permission_for_role("viewer", permission, True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"FAILED to listen on 127.0.0.1:{args.port}", flush=True)
        sys.exit(1)

    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, lambda: loop.quit() or False)

    def stdin_closed(*_: object) -> bool:
        loop.quit()
        return False

    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_HUP | GLib.IO_ERR | GLib.IO_IN, stdin_closed)
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}{args.path}", flush=True)
    loop.run()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""A stand-in desktop notification server (org.freedesktop.Notifications).

Chromium on Linux hands web notifications to this D-Bus service. The test
harness runs it on a private session bus so that it can see which
notifications a page or service worker showed and "click" them.

stdout: one JSON object per line: {"event": "ready"},
        {"event": "notify", "id", "summary", "body", "actions", "replaces"},
        {"event": "close", "id"}.
stdin:  "click <id>"   -> emits ActionInvoked(id, "default") (a click on the notification)
        "dismiss <id>" -> emits NotificationClosed(id, 2) (closed by the user)
"""
import json
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

IFACE = 'org.freedesktop.Notifications'


def emit(obj):
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()


class Notifications(dbus.service.Object):
    def __init__(self, bus):
        super().__init__(bus, '/org/freedesktop/Notifications')
        self.next_id = 0

    @dbus.service.method(IFACE, out_signature='as')
    def GetCapabilities(self):
        return ['actions', 'body', 'body-hyperlinks', 'icon-static', 'persistence']

    @dbus.service.method(IFACE, out_signature='ssss')
    def GetServerInformation(self):
        return ('herald-test', 'herald', '1.0', '1.2')

    @dbus.service.method(IFACE, in_signature='susssasa{sv}i', out_signature='u')
    def Notify(self, app_name, replaces_id, icon, summary, body, actions, hints, timeout):
        if replaces_id:
            nid = int(replaces_id)
        else:
            self.next_id += 1
            nid = self.next_id
        emit({'event': 'notify', 'id': nid, 'summary': str(summary), 'body': str(body),
              'actions': [str(a) for a in actions], 'replaces': int(replaces_id)})
        return dbus.UInt32(nid)

    @dbus.service.method(IFACE, in_signature='u')
    def CloseNotification(self, nid):
        emit({'event': 'close', 'id': int(nid)})
        self.NotificationClosed(nid, 3)

    @dbus.service.signal(IFACE, signature='us')
    def ActionInvoked(self, nid, action_key):
        pass

    @dbus.service.signal(IFACE, signature='uu')
    def NotificationClosed(self, nid, reason):
        pass


def main():
    DBusGMainLoop(set_as_default=True)
    bus = dbus.SessionBus()
    name = dbus.service.BusName(IFACE, bus)  # noqa: F841 (keeps the name owned)
    server = Notifications(bus)
    loop = GLib.MainLoop()

    def on_stdin(source, condition):
        line = sys.stdin.readline()
        if not line:
            loop.quit()
            return False
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            nid = dbus.UInt32(int(parts[1]))
            if parts[0] == 'click':
                server.ActionInvoked(nid, 'default')
            elif parts[0] == 'dismiss':
                server.NotificationClosed(nid, 2)
        return True

    GLib.io_add_watch(sys.stdin, GLib.IO_IN | GLib.IO_HUP, on_stdin)
    emit({'event': 'ready'})
    loop.run()


if __name__ == '__main__':
    main()

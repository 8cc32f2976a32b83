#!/usr/bin/python3
"""A BitTorrent peer on libtorrent, for comparing clients in bench-distribution.

    lt-peer.py TORRENT DIR [UPLOAD_SLOTS]

Downloads TORRENT into DIR (every piece checked by SHA-1), creates DIR/<name>.done once
it has the whole file, then seeds until it is killed. TCP only (uTP's delay-based
congestion control backs off behind the capped links' queues), no DHT or local
discovery (peers come from the tracker), announces as often as the tracker asks.
Needs Debian's python3-libtorrent (run with /usr/bin/python3). Used as

    bench-distribution --phases p2p --peer-command scripts/lt-peer.py --peer-args 8
"""
import os
import sys
import time

import libtorrent as lt

torrent, out = sys.argv[1], sys.argv[2]
slots = int(sys.argv[3]) if len(sys.argv) > 3 else 8
os.makedirs(out, exist_ok=True)
session = lt.session({
    "listen_interfaces": "0.0.0.0:7881",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    # The benchmark's tracker is HTTPS with the cluster's own CA.
    "validate_https_trackers": False,
    "min_announce_interval": 2,
    "unchoke_slots_limit": slots,
    "alert_mask": 0,
})
info = lt.torrent_info(torrent)
handle = session.add_torrent({"ti": info, "save_path": out})
while not handle.status().is_seeding:
    time.sleep(0.1)
open(os.path.join(out, info.name() + ".done"), "w").close()
while True:
    time.sleep(1)

#!/bin/bash
# Start a fresh 3-member etcd on loopback (data in /dev/shm); prints PIDs to /tmp/etcd3.pids
D=/dev/shm/etcdbench; rm -rf $D; mkdir -p $D
T=bench-$RANDOM
IC="m0=http://127.0.0.1:23800,m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802"
: > /tmp/etcd3.pids
for i in 0 1 2; do
  etcd --name m$i --data-dir $D/m$i --listen-client-urls http://127.0.0.1:2379$i --advertise-client-urls http://127.0.0.1:2379$i \
    --listen-peer-urls http://127.0.0.1:2380$i --initial-advertise-peer-urls http://127.0.0.1:2380$i \
    --initial-cluster $IC --initial-cluster-state new --initial-cluster-token $T --logger zap --log-level warn > $D/m$i.log 2>&1 &
  echo $! >> /tmp/etcd3.pids
done
for i in 0 1 2; do for t in $(seq 1 100); do curl -s http://127.0.0.1:2379$i/health | grep -q '"health":"true"' && break; sleep 0.2; done; done
echo etcd up

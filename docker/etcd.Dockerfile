# etcd for the compose cluster's control plane. Built by docker/build.sh, which stages
# this context: rootfs/ holds Debian's etcd and etcdctl (packages etcd-server and
# etcd-client) and the shared libraries and loader they need. There is no base image.
FROM scratch
COPY rootfs/ /
# etcd creates its --data-dir (mode 0700) under this directory, which must belong to
# the user it runs as; a volume mounted here starts as a copy of it.
COPY --chown=10001:10001 var/ /var/
USER 10001:10001
WORKDIR /var/lib/etcd
EXPOSE 2379 2380
# etcdctl checks that etcd serves a read through consensus, not only that it listens.
HEALTHCHECK --interval=2s --timeout=4s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/etcdctl", "--endpoints", "http://127.0.0.1:2379", "--command-timeout", "3s", "endpoint", "health"]
ENTRYPOINT ["/usr/local/bin/etcd"]

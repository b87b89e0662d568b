"""Attested micro-segmentation: workload identities, the segmentation policy, mutual TLS.

A Medclave mesh CA (hosted by the key broker, ``kbs/mesh_ca.py``) issues short-lived X.509
certificates only to workloads whose evidence verified and passed the tenant's policy for the
role; every service then accepts only the peers the deployment's segmentation policy lists
(docs/continuous-trust.md, "Attested micro-segmentation").

* :mod:`medclave.mesh.policy`: workload identities (``medclave://TENANT/ROLE/NAME``) and the
  segmentation policy;
* :mod:`medclave.mesh.certs`: the CA, certificate requests, reading a peer's certificate;
* :mod:`medclave.mesh.tls`: server and client TLS contexts that rotate, the peer checks, the
  deny list;
* :mod:`medclave.mesh.workload`: obtaining and renewing a workload's certificate;
* :mod:`medclave.mesh.database`: the enclave's PostgreSQL connections over mutual TLS with its
  workload certificate, and the server lines that admit only a tenant's enclaves.
"""

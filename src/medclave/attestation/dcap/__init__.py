"""Intel DCAP, shared by the ``sgx`` and ``tdx`` platforms: the PCK certificate's SGX extension
(``pck``), Intel PCS documents (``pcs``), collateral classification (``collateral``), TCB level
matching (``tcb``), the SGX REPORT body (``report``) and quote verification (``verify``)."""

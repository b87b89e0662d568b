"""The clinical scribe (issue 14): a visit's audio or transcript to a SOAP note, ICD-10-CM code
suggestions and a FHIR DocumentReference, inside the enclave. The route is
:class:`medclave.apps.scribe.route.ScribeRoute`."""

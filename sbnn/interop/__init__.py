"""Interoperability with the field's formats: NIR graphs (:mod:`sbnn.interop.nir`) and NeuroBench
metrics (:mod:`sbnn.interop.neurobench`). Both need the optional ``nir`` extra
(``pip install 'sbnn[nir]'``); importing this package alone needs neither."""

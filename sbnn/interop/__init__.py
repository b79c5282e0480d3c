"""Interoperability with the field's formats: NIR graphs (:mod:`sbnn.interop.nir`), NeuroBench
metrics (:mod:`sbnn.interop.neurobench`) and the deployed graph as an snnTorch network
(:mod:`sbnn.interop.snntorch_graph`, which NeuroBench measures). The first two need the optional
``nir`` extra (``pip install 'sbnn[nir]'``) and NeuroBench; importing this package alone needs
neither."""

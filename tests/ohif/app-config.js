/**
 * OHIF Viewer v3 configuration for tests/test_ohif_viewer.py and
 * scripts/make_viewer_screenshots.py.
 *
 * tests/dicomweb_proxy.py serves this file in place of the build's own app-config.js,
 * and serves OHIF and Orthanc's DICOMweb API from one origin, so the data source is the
 * page's own origin (no CORS set-up, no fixed port).
 */
/* global window */
const dicomWebRoot = window.location.origin + '/dicom-web';

window.config = {
  name: 'covid-ct-node tests',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  // Two CPU cores in CI: more workers only compete with Orthanc and chromium itself.
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  // Headless chromium without a GPU renders with the CPU fallback; the warning modal
  // would cover the viewport in screenshots.
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  showErrorDetails: 'always',
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (test)',
        name: 'orthanc',
        wadoUriRoot: dicomWebRoot,
        qidoRoot: dicomWebRoot,
        wadoRoot: dicomWebRoot,
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
        dicomUploadEnabled: false,
      },
    },
  ],
  httpErrorHandler: error => {
    // Surfaces in the driver's console log, which the test reports on failure.
    console.warn('OHIF http error', error && error.status);
  },
};
